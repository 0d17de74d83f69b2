"""The sifive_test finisher: a guest write ends the machine (QEMU's semantics).

0x5555 = pass (exit 0), ``(code << 16) | 0x3333`` = fail (exit ``code``),
0x7777 = reset.  Other values are ignored.
"""

from __future__ import annotations

import logging

from kvmpy.tcg.errors import MachineExit

log = logging.getLogger(__name__)

SIZE = 0x1000
FINISHER_FAIL = 0x3333
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


class SifiveTest:
    """Stateless: ``reset()`` has nothing to do and there is no state to save."""

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return
        status, code = value & 0xFFFF, (value >> 16) & 0xFFFF
        if status == FINISHER_PASS:
            raise MachineExit(0, "sifive_test: pass")
        if status == FINISHER_FAIL:
            raise MachineExit(code, f"sifive_test: fail code {code}")
        if status == FINISHER_RESET:
            raise MachineExit(0, "sifive_test: reset", reset=True)
        log.debug("sifive_test: ignored write %#x", value)
