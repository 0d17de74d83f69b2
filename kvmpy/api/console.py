"""The VM's serial console for scripts: ``output``, ``expect(pattern)`` and ``send(text)``.

``Console`` is independent of how the VM runs: the in-process machine feeds
it through ``ConsoleBackend`` (a chardev backend for COM1), a child process
through a thread reading its stdout pipe. Output is kept as text (UTF-8,
undecodable bytes replaced). ``expect`` works like pexpect's: it searches
from where the previous match ended, so consecutive expects walk forward
through the output; a ``str`` pattern is literal, a compiled ``re.Pattern``
is a regular expression, and the ``re.Match`` is returned.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from typing import Callable

from kvmpy.api.errors import ConsoleClosed, ExpectTimeout, GuestVanished, VMError
from kvmpy.devices.chardev import CharBackend

MAX_OUTPUT = 16 << 20  # characters kept; older output is dropped (a fuzzing loop may print forever)
SEND_TIMEOUT = 30.0  # how long send() waits for the UART's input buffer to take everything



class Console:
    """Everything the guest printed, with an expect cursor; ``send`` types into the guest."""

    def __init__(self, max_output: int = MAX_OUTPUT) -> None:
        self._cond = threading.Condition()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._cursor = 0  # expect() searches from here
        self._max = max_output
        self._input: Callable[[bytes], int] | None = None
        self._closed: str | None = None  # why no more output will come
        self._vanished = False  # the guest reset by itself, without a panic or poweroff on the console

    # ---- fed by the VM's side ------------------------------------------------
    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        with self._cond:
            self._text += text
            if len(self._text) > self._max:
                drop = len(self._text) - self._max // 2
                self._text = self._text[drop:]
                self._cursor = max(0, self._cursor - drop)
            self._cond.notify_all()

    def attach_input(self, receive: Callable[[bytes], int]) -> None:
        """``receive(data)`` delivers input and returns how many bytes it took (the rest is offered again)."""
        with self._cond:
            self._input = receive
            self._cond.notify_all()

    def close(self, reason: str = "the VM has stopped", *, vanished: bool = False) -> None:
        """No more output will come, for ``reason``; ``vanished``: the guest reset by itself without a word,
        and ``expect`` says so with GuestVanished."""
        with self._cond:
            if self._closed is None:
                self._closed = reason
                self._vanished = vanished
            self._input = None
            self._cond.notify_all()

    @property
    def panicked(self) -> bool:
        """Whether the guest printed a kernel panic: a reset after one is not a guest that vanished."""
        return "Kernel panic" in self.output

    # ---- for scripts ---------------------------------------------------------
    @property
    def output(self) -> str:
        """All output so far (the last ``max_output`` characters of it)."""
        with self._cond:
            return self._text

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed is not None

    def expect(self, pattern: "str | re.Pattern[str]", timeout: float | None = 30.0) -> re.Match[str]:
        """Wait for ``pattern`` after the previous match; return its ``re.Match``.

        Raises ExpectTimeout (a TimeoutError) after ``timeout`` seconds, or
        ConsoleClosed (an EOFError) when the VM ends first; both show the tail of the output.
        """
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        if not isinstance(regex.pattern, str):
            raise TypeError("console.expect needs a str or a str regex (the console is decoded as UTF-8)")
        shown = repr(pattern) if isinstance(pattern, str) else f"regex {regex.pattern!r}"
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._text, self._cursor)
                if m is not None:
                    self._cursor = m.end()
                    return m
                if self._closed is not None:
                    cls = GuestVanished if self._vanished else ConsoleClosed
                    raise cls(f"{self._closed} before {shown} appeared on the console", self._text)
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise ExpectTimeout(f"{shown} did not appear on the console within {timeout} s",
                                        self._text)
                self._cond.wait(left)

    def send(self, data: "str | bytes", timeout: float = SEND_TIMEOUT) -> None:
        """Type ``data`` (a str is sent as UTF-8) into the guest's serial port."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        end = time.monotonic() + timeout
        while raw:
            with self._cond:
                while self._input is None:
                    if self._closed is not None:
                        raise ConsoleClosed(f"{self._closed}; cannot send {raw[:40]!r}", self._text)
                    left = end - time.monotonic()
                    if left <= 0:
                        raise VMError("the console is not connected yet (the VM has not started)")
                    self._cond.wait(left)
                receive = self._input
            taken = receive(raw)
            raw = raw[taken:]
            if raw:  # the UART's input buffer is full: the guest has to read some first
                if time.monotonic() > end:
                    raise VMError(f"the guest did not read its serial input within {timeout} s "
                                  f"({len(raw)} bytes left unsent)")
                time.sleep(0.001)


class ConsoleBackend(CharBackend):
    """The chardev backend an in-process machine's COM1 writes to: it feeds a ``Console``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, data: bytes) -> None:
        self.console.feed(data)

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        self.console.attach_input(receive)

    def close(self) -> None:
        self.console.close()
