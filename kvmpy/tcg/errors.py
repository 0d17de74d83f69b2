"""Exceptions of the TCG fallback: user errors, guest traps and machine exits."""

from __future__ import annotations


class TcgUserError(Exception):
    """A mistake the user can fix (bad ELF, wrong architecture, too little memory, bad option).

    The CLI prints ``str(exc)`` on one line and exits with status 2.
    """

    exit_code = 2


class GuestTrap(Exception):
    """A synchronous guest exception raised by a helper inside translated code.

    ``pc`` is the faulting instruction; ``back`` is how many instructions of the
    current block had been counted but did not retire (the backend uses it to keep
    instret exact).
    """

    __slots__ = ("cause", "tval", "pc", "back")

    def __init__(self, cause: int, tval: int, pc: int = 0, back: int = 0) -> None:
        super().__init__(cause, tval)
        self.cause = cause
        self.tval = tval
        self.pc = pc
        self.back = back


class MachineExit(Exception):
    """The guest asked the board to stop (sifive_test, HTIF); ``status`` is the process exit code."""

    def __init__(self, status: int, reason: str, reset: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.reset = reset
        self.back = 0      # set by the softmmu when a guest store triggered the exit


class HartYield(Exception):
    """The board takes the CPU thread from the running hart to the next one.

    Raised between translation blocks (from the CPU's poll or idle callback), so the
    hart's state is whole and its CPU loop resumes at ``R[pc]`` when it runs again.
    """
