"""The exceptions the Python API raises: one base class, so a script can catch every VM failure at once.

``VMError`` is the base. ``QMPError`` carries QMP's error class and description
(``GenericError``, ``CommandNotFound``, ...). ``WaitTimeout`` is also a
``TimeoutError`` and ``VMGone`` an ``EOFError``, so code that already catches
those keeps working; their console flavours (``ExpectTimeout``,
``ConsoleClosed``) carry the tail of the console output.
``UnsupportedError`` says plainly that one mode cannot do what was asked.
"""

from __future__ import annotations

TAIL_CHARS = 2000  # how much of the console output an error message shows


def output_tail(text: str, limit: int = TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text``, marked as cut when they are not all of it."""
    return text if len(text) <= limit else "[...]" + text[-limit:]


class VMError(RuntimeError):
    """Something a VM could not do; every other API error is one of these."""


class QMPError(VMError):
    """A QMP command failed: ``error_class`` and ``desc`` are QMP's own."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class UnsupportedError(VMError):
    """The VM's mode (in-process or child process) cannot do this."""


class WaitTimeout(VMError, TimeoutError):
    """Something awaited (an event, the VM's exit, a console pattern) did not happen in time."""


class VMGone(VMError, EOFError):
    """The VM ended, so what was awaited can no longer happen."""


class ExpectTimeout(WaitTimeout):
    """``console.expect`` did not see its pattern in time."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(f"{message}; the console's last output was:\n{output_tail(output)}")
        self.output = output


class ConsoleClosed(VMGone):
    """The VM ended (or closed its console) before ``console.expect`` saw its pattern."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(f"{message}; the console's last output was:\n{output_tail(output)}")
        self.output = output


class GuestVanished(ConsoleClosed):
    """The guest ended by itself without a word: it reset (a triple fault under -no-reboot) with no kernel
    panic or poweroff on its console. Under a broken (nested, emulated) hypervisor this is the machine's
    fault more often than the guest's or the VMM's, so test harnesses may treat it like a hang."""
