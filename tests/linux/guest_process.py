"""A VMM process (kvmpy or qemu-system-x86_64) whose guest console is its stdin/stdout, for shell-driven tests."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kvmpy.api.errors import ExpectTimeout, GuestVanished, WaitTimeout

# What a Linux guest prints when it ends on purpose or in a panic; a guest that exits without any of them reset silently.
GUEST_LAST_WORDS = ("Kernel panic", "reboot: ", "Oops", "BUG: ")

if TYPE_CHECKING:
    from kvmpy.api.console import Console


def sh(console: "GuestProcess | Console", command: str, marker: str, timeout: float = 120.0) -> str:
    """Run ``command`` in the guest shell on ``console`` (a GuestProcess or a kvmpy.VM's console); returns the
    console text from the echoed command up to ``marker`` (letters and digits), which the shell prints after it."""
    console.send(f"{command}; echo {marker}-$((6*7))\n")
    m = console.expect(f"{marker}-42", timeout=timeout)  # the output, not the echoed command
    text, echoed = m.string, f"{marker}-$((6*7))"
    start = text.rfind(echoed if isinstance(text, str) else echoed.encode(), 0, m.start())
    out = text[max(start, 0):m.start()]
    return out if isinstance(out, str) else out.decode(errors="replace")


class GuestProcess:
    """Runs ``argv`` in ``cwd``; ``expect`` waits for a regex in the console output, ``send`` types text."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.out = bytearray()
        self.last_output = time.monotonic()  # when the console last printed anything
        self._pos = 0
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self._cond:
                self.out += chunk
                self.last_output = time.monotonic()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def expect(self, pattern: str, timeout: float) -> re.Match[bytes]:
        """The first match of ``pattern`` after the previous expect's match.

        ExpectTimeout (kvmpy's, so the bed plugin can tell a guest that stopped from a wrong answer) when it
        does not show within ``timeout``; AssertionError with the tail when the process's output ended."""
        regex = re.compile(pattern.encode())
        with self._cond:
            found = self._cond.wait_for(lambda: regex.search(self.out, self._pos) or not self._pump.is_alive(),
                                        timeout)
            m = regex.search(self.out, self._pos)
            if m is None and found is False:
                raise ExpectTimeout(f"{self.argv[0]}: no {pattern!r} within {timeout} s ({len(self.out)} bytes of "
                                    f"output, the last {time.monotonic() - self.last_output:.0f} s ago)", self.text())
            if m is None:
                status = self.proc.wait(5)
                text = self.text()
                if status == 0 and not any(w in text for w in GUEST_LAST_WORDS):
                    # a reset under -no-reboot with nothing said: a triple fault (the bed's plugin re-runs it)
                    raise GuestVanished(f"{self.argv[0]}: no {pattern!r}; the guest reset by itself (status 0, "
                                        f"no panic or poweroff on its console)", text)
                raise AssertionError(f"{self.argv[0]}: no {pattern!r}, its output ended (it exited, status "
                                     f"{status}); output: {text[-3000:]}")
            self._pos = m.end()
            return m

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def sh(self, command: str, marker: str, timeout: float = 120.0) -> str:
        """``command``'s console text, as the module's ``sh``."""
        return sh(self, command, marker, timeout)

    def text(self) -> str:
        return self.out.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        """The process's exit status; WaitTimeout if it is still running after ``timeout`` seconds."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"{self.argv[0]} still running after {timeout} s; output: "
                              f"{self.text()[-2000:]}") from None
        self._pump.join(5)
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:  # only a kernel that stopped serving the process does this
            raise WaitTimeout(f"{self.argv[0]} did not end within 30 s of SIGKILL: it is stuck in the kernel") \
                from None
        self._pump.join(5)
